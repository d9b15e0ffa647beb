from amfs_operator.cli import main

main()
