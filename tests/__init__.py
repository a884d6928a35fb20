"""The test suite: folders mirror src/gsit (attention, models, data, analysis) and its floors."""
