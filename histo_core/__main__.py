from histo_core.cli import main

raise SystemExit(main())
