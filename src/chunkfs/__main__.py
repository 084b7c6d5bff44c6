from chunkfs.cli.main import main

raise SystemExit(main())
