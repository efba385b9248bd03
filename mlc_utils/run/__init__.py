"""Running the study: the papermill pipeline over the stage notebooks, and the HTML reports."""
