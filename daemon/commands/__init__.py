"""The command line: argument parsing and one module per subcommand that is more than a few lines."""
