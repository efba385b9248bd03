import sys

from mlc_utils.core.allocator import restart_on_tcmalloc

# before torch is imported; sys.orig_argv keeps the interpreter's own options (-X, -W, -u)
restart_on_tcmalloc([sys.executable, *sys.orig_argv[1:]])

from mlc_utils.cli import main  # noqa: E402

raise SystemExit(main())
