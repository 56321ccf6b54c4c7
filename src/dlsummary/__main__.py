import sys

from dlsummary.cli import main

sys.exit(main())
