"""valleysim: SGD dynamics on analytic landscapes."""
