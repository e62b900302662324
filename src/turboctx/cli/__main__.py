from turboctx.cli import main

main()
