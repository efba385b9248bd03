import sys

from mlc_utils.core.allocator import restart_on_tcmalloc

restart_on_tcmalloc([sys.executable, "-m", "mlc_utils", *sys.argv[1:]])  # before torch is imported

from mlc_utils.cli import main  # noqa: E402

raise SystemExit(main())
