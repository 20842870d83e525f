from runtimed.cli import main

raise SystemExit(main())
