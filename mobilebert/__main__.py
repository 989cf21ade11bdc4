import sys

from mobilebert.cli import main

sys.exit(main())
