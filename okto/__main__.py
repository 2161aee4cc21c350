from okto.cli import main

raise SystemExit(main())
