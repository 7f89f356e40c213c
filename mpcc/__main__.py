from mpcc.cli import main

raise SystemExit(main())
