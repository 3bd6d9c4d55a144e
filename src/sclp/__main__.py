from sclp.cli import main

raise SystemExit(main())
