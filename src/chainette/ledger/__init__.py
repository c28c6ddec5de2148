"""What is kept between runs: the request ledger (SQLite), its keys, and token prices."""
