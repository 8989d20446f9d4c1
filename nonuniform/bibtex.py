"""
@article{Punjani2020,
title = "Non-uniform refinement: adaptive regularization improves single-particle cryo-EM reconstruction",
author = "Punjani, Ali and Zhang, Haowei and Fleet, David J.",
journal = "Nature Methods",
volume = "17",
number = "12",
pages = "1214--1221",
year = "2020",
doi = "http://doi.org/10.1038/s41592-020-00990-8",
url = "https://www.nature.com/articles/s41592-020-00990-8"
}

@article{Scheres2012,
title = "RELION: implementation of a Bayesian approach to cryo-EM structure determination",
author = "Scheres, Sjors H. W.",
journal = "Journal of Structural Biology",
volume = "180",
number = "3",
pages = "519--530",
year = "2012",
doi = "http://doi.org/10.1016/j.jsb.2012.09.006"
}

@article{Chen2013,
title = "High-resolution noise substitution to measure overfitting and validate resolution in 3D structure determination by single particle electron cryomicroscopy",
author = "Chen, Shaoxia and McMullan, Greg and Faruqi, Abdul R. and Murshudov, Garib N. and Short, Judith M. and Scheres, Sjors H. W. and Henderson, Richard",
journal = "Ultramicroscopy",
volume = "135",
pages = "24--35",
year = "2013",
doi = "http://doi.org/10.1016/j.ultramic.2013.06.004"
}
"""
