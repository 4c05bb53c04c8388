from qanchor.cli import main

main()
