"""Work for the lab: choosing samples to measure (Kennard–Stone, DUPLEX, Puchwein, cLHS; ``select``),
and moving a calibration to another instrument (DS, PDS, SST, slope/bias; ``transfer``)."""
