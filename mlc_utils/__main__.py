from mlc_utils.cli import main

raise SystemExit(main())
