import sys

from sft_tui.cli import main

sys.exit(main())
