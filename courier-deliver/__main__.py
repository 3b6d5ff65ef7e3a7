"""python -m courier_deliver -C ETC: courierd, the queue manager."""

import sys

from courier_deliver.main import main

sys.exit(main())
