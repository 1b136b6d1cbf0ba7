"""Worker processes: supervised pools fed over shared memory, and the same workers as Ray actors."""
