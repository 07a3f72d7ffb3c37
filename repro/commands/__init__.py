
    cli.add_command(scaling_sweep)
