import sys

from edgegw.cli.main import main

sys.exit(main())
