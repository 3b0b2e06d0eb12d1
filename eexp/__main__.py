from eexp.cli import main

main()
