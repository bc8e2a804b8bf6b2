"""param.Parameterized studies: settings in, cached derived results out."""
