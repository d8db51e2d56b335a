DROP INDEX "Post_authorId_published_idx";
