"""Choosing samples for the lab (Kennard–Stone, DUPLEX, Puchwein, cLHS) and its ``select`` command."""
