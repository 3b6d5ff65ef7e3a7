import sys

from libcourier.control.main import main

sys.exit(main())
