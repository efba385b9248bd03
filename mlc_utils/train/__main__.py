"""``python -m mlc_utils.train --config CONFIG.json``: what ``torchrun`` starts on every process."""
from mlc_utils.train.distributed import main

raise SystemExit(main())
