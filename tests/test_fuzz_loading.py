"""Property tests: load_input on arbitrary and near-valid files returns or raises InputError."""
