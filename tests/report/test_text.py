from ticketlab.report.text import percent


def test_small_densities_keep_their_digits():
    assert percent(0.8) == "80.00%" and percent(0.0123) == "1.23%" and percent(0.0) == "0.00%"
    assert percent(0.5 ** 15) == "0.00305%" and percent(0.0005, 1) == "0.05%" and percent(0.25, 1) == "25.0%"
