"""Operations: the status site's posts (and, later, control rods and policy)."""
