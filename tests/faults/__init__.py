"""Fault injection: the receiver and the bus under crashes, outages, full disks,
hostile input and eavesdroppers (issue 8). Figures are printed and collected in
`docs/reliability.md`."""
