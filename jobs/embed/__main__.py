"""`python -m jobs.embed ...`: see jobs/embed/runner.py."""

import sys

from jobs.embed.runner import main

sys.exit(main())
