from mkimage.cli import main

main()
