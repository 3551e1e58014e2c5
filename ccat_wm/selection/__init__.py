"""Data selection: the join graph of filterable tables and the group_by dimensions."""
