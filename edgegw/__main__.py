import sys

from edgegw.cli import main

sys.exit(main())
