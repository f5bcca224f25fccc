from glimpse.cli import main

raise SystemExit(main())
