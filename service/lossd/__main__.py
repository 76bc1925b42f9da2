from lossd.cli import main

raise SystemExit(main())
