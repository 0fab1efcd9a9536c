from kmemopt.cli import main

main()
