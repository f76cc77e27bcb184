from nativevl.cli import main
main()
