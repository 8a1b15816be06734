"""`lum verify`: check a warehouse (tables, keys, files, model versions, day completeness) and name what is wrong."""
