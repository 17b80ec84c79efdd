from pansight.cli import main

raise SystemExit(main())
