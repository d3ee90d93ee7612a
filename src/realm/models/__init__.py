"""Models: REALM (``realm.models.realm``) and, in later modules, the baselines and the LM listener."""
