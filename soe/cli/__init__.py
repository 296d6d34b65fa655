"""The `soe` command line: `app` composes one command module per component (`soe.cli.<component>`)."""
