from edgeloop.cli import main

raise SystemExit(main())
