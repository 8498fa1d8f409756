"""Human review of the cleaning proposals: the ranked queue out (`queue`), three offline ways to review it
(the queue CSV, a Label Studio import file `label_studio`, the self-contained page `page`), reviewed
decisions back in (`decisions`), and what a review buys with the truth known (`simulation`)."""
