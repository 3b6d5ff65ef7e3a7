"""The instance fixtures (new_instance, running_instance) live in
tests/conftest.py so that tests/clients can use them too."""
