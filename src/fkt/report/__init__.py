"""Tables, statistics and figures made from run directories."""
