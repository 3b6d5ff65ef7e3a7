# courier-py: `make run` starts the demo instance, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= var/demo
DEMO_PORT_BASE ?= 20000

.PHONY: venv run test unit integration clients lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	@if [ ! -f $(DEMO)/etc/courierd ]; then \
	  $(VENV)/bin/courier init $(DEMO) --port-base $(DEMO_PORT_BASE) --hostname localhost && \
	  $(VENV)/bin/courier adduser -C $(DEMO)/etc demo@example.com demo; \
	fi
	@echo "demo login: demo@example.com / demo   (config in $(DEMO)/etc)"
	@echo "ports: SMTP $$(($(DEMO_PORT_BASE)+25))  submission $$(($(DEMO_PORT_BASE)+587))  SMTPS $$(($(DEMO_PORT_BASE)+465))  IMAP $$(($(DEMO_PORT_BASE)+143))  IMAPS $$(($(DEMO_PORT_BASE)+993))  POP3 $$(($(DEMO_PORT_BASE)+110))  POP3S $$(($(DEMO_PORT_BASE)+995))"
	$(VENV)/bin/courier start --foreground -C $(DEMO)/etc

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest -q tests

unit: venv
	$(PY) -m pytest -q tests/unit

integration: venv
	$(PY) -m pytest -q tests/integration

clients: venv
	$(PY) -m pytest -q tests/clients

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
