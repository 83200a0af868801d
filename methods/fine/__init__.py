"""FINE: fake-alignment evaluation with the Consistency Score (CS) and the Consistent Safety Score (CSS)."""
