"""What a study is turned into for people: the HTML report, the trial table, exported
architectures with model cards, and effective-receptive-field maps."""
